"""The *Nodule (3D)* dock widget: a nodule in a whole scan, its 3D hypotheses and volumes."""
