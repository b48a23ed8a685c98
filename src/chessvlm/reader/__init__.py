"""The fast board reader, a square-aligned CNN (or CLIP ViT) with a board locator.

Modules, in the order data flows through them: `images` (decoding and cropping image files),
`data` (a dataset split decoded into memory), `augment` (training-time augmentation), `model`
(the networks and the square-order geometry), `train` (the resumable training loop), `read`
(checkpoints and batched reading), `evaluate` (scoring a split) and `default` (the reader
shipped in the package). Nothing is re-exported here, so that importing the light modules
(images, default) does not load torch.
"""
