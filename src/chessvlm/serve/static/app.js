// The chessvlm page: send an image to /api/read, show each board read, and let the user fix
// what an image cannot show (side to move, castling) or what was read wrong (orientation).
// Every FEN and drawing comes from the server (python-chess); only the lichess links are
// made here, from the FEN.
"use strict";

const drop = document.getElementById("drop");
const message = document.getElementById("message");
const results = document.getElementById("results");
const photo = document.getElementById("photo");
const boxes = document.getElementById("boxes");
const boardsView = document.getElementById("boards");
const template = document.getElementById("board-template");
const SVG = "http://www.w3.org/2000/svg";

function say(text, isError = false) {
  message.textContent = text;
  message.classList.toggle("error", isError);
}

async function readImage(file) {
  if (!file) return;
  say(`Reading ${file.name || "the pasted image"}…`);
  // A form keeps the file's name, which the answer and the caption repeat.
  const form = new FormData();
  form.append("file", file, file.name || "pasted image");
  const response = await fetch("/api/read", { method: "POST", body: form }).catch((error) => ({ ok: false, json: async () => ({ error: { message: String(error) } }) }));
  const answer = await response.json().catch(() => ({ error: { message: "no answer" } }));
  if (!response.ok) {
    say(`Cannot read this image: ${answer.error.message}`, true);
    return;
  }
  showImage(file, answer.image, answer.boards);
  boardsView.replaceChildren(...answer.boards.map(boardView));
  const count = answer.boards.length;
  say(`${count} board${count === 1 ? "" : "s"} read.`);
}

function showImage(file, image, boards) {
  photo.src = URL.createObjectURL(file);
  boxes.setAttribute("viewBox", `0 0 ${image.width} ${image.height}`);
  boxes.replaceChildren(...boards.filter((board) => board.board_box).map((board) => {
    const [left, top, right, bottom] = board.board_box;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", left);
    rect.setAttribute("y", top);
    rect.setAttribute("width", right - left);
    rect.setAttribute("height", bottom - top);
    return rect;
  }));
  document.getElementById("photo-caption").textContent =
    `${image.name}: ${image.width}×${image.height} ${image.format}, boards outlined`;
  results.hidden = false;
}

function boardView(result) {
  const view = template.content.firstElementChild.cloneNode(true);
  const [placement, toMove, castling] = result.fen.split(" ");
  const bottom = result.notes.orientation.startsWith("black") ? "black" : "white";
  const state = { placement, toMove, castling, rotate: false, bottom,
    uncertain: (result.uncertain_squares || []).map((entry) => entry.square) };
  const name = `to-move-${boardsView.childElementCount}-${Math.random().toString(36).slice(2)}`;
  for (const radio of view.querySelectorAll(".to-move input")) {
    radio.name = name;
    radio.checked = radio.value === toMove;
    radio.addEventListener("change", () => { state.toMove = radio.value; update(view, state); });
  }
  for (const box of view.querySelectorAll(".castling input")) {
    box.checked = castling.includes(box.value);
    box.addEventListener("change", () => {
      state.castling = [...view.querySelectorAll(".castling input:checked")]
        .map((checked) => checked.value).join("") || "-";
      update(view, state);
    });
  }
  view.querySelector(".flip").addEventListener("click", () => {
    state.rotate = !state.rotate;
    update(view, state);
  });
  view.querySelector(".copy").addEventListener("click", () => copyFen(view));
  const notes = view.querySelector(".notes");
  for (const [key, text] of Object.entries(result.notes)) {
    const term = document.createElement("dt");
    term.textContent = key.replace("_", " ");
    const detail = document.createElement("dd");
    detail.textContent = text;
    notes.append(term, detail);
  }
  update(view, state);
  return view;
}

async function update(view, state) {
  const query = new URLSearchParams({
    placement: state.placement, to_move: state.toMove, castling: state.castling,
    rotate: state.rotate, bottom: state.bottom, uncertain: state.uncertain.join(","),
  });
  const response = await fetch(`/api/position?${query}`);
  const answer = await response.json();
  if (!response.ok) {
    say(`Cannot show this position: ${answer.error.message}`, true);
    return;
  }
  view.querySelector(".drawing").innerHTML = answer.svg;
  view.querySelector(".fen").value = answer.fen;
  // Rights the placement cannot have are dropped from the FEN: the boxes show what it holds.
  const rights = answer.fen.split(" ")[2];
  for (const box of view.querySelectorAll(".castling input")) {
    box.checked = rights.includes(box.value);
  }
  const path = answer.fen.replaceAll(" ", "_");
  view.querySelector(".analysis").href = `https://lichess.org/analysis/standard/${path}`;
  view.querySelector(".editor").href = `https://lichess.org/editor/${path}`;
  view.querySelector(".uncertain").textContent = answer.uncertain.length
    ? `Uncertain squares (marked): ${answer.uncertain.join(", ")}`
    : "Every square was read with confidence.";
  view.querySelector(".problems").textContent = answer.problems.length
    ? `Not a legal position: ${answer.problems.join(", ")}` : "";
}

async function copyFen(view) {
  const fen = view.querySelector(".fen");
  try {
    await navigator.clipboard.writeText(fen.value);
  } catch {
    // Without clipboard access (an insecure origin), the FEN is selected for Ctrl+C.
    fen.select();
    say("Select-all done: press Ctrl+C to copy the FEN.");
    return;
  }
  say("FEN copied.");
}

document.getElementById("file").addEventListener("change", (event) => {
  readImage(event.target.files[0]);
});
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((entry) => entry.type.startsWith("image/"));
  if (item) readImage(item.getAsFile());
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  readImage(event.dataTransfer.files[0]);
});
