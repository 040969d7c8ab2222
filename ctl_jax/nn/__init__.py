"""Network parts both tasks share: backbones, Keras weight import, the projection head, losses."""
