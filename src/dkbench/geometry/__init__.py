"""Shared geometry of masks and boxes, batched in torch on the tensors' device (one home each):

- `components`  connected components: labels, the largest component and one box per component
                (detection targets) of a batch of masks;
- `boxes`       box from mask (one empty-mask rule: NaN), box clamping, IoU, crop-and-resize, boxes
                moved by the augmentation's flips / rot90.

Boxes are (B, 2·d) = (lo per axis…, hi per axis…) in (x, y[, z]) order (last tensor axis
first, as the datasets' `bbox`), hi exclusive, in pixels.
"""
