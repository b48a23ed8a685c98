"""The questions a VLM is asked: one prompt per answer target, and the image placeholder.

Their own module so that the VLM dataset, the offline tokenizer and `predict` share them
without importing each other.
"""

from __future__ import annotations

PROMPTS = {
    "compact": (
        "Read the chess position in this image. Answer with JSON only, exactly in this form: "
        '{"board": ["<rank 8>", "<rank 7>", "<rank 6>", "<rank 5>", "<rank 4>", "<rank 3>", '
        '"<rank 2>", "<rank 1>"]}. List the 8 ranks from rank 8 down to rank 1, each from the '
        "a-file to the h-file, as seen from white's side, even when the image shows the board "
        "from black's side. Each rank is 8 symbols separated by single spaces: FEN letters for "
        "pieces (white K Q R B N P, black k q r b n p) and '.' for an empty square, e.g. "
        '"r . b q k b n r".'
    ),
    # The seed's own training prompt, word for word, so its experiment can be reproduced.
    "seed": (
        "Analyze this chess board image and describe the position in JSON format. \n\n"
        "The JSON should include:\n"
        "1. A list of all pieces with their squares, colors, types, and values\n"
        "2. Metadata including side to move, castling rights, and material balance\n\n"
        "Output only valid JSON, no additional text."
    ),
}
# For a model trained from scratch, which learns no language: a prompt only costs step time
# (the compact prompt is half of a sample's tokens) and teaches nothing.
SHORT_PROMPT = "Read the board."
IMAGE_TOKEN = "<image>"
