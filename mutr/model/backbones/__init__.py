"""Backbone families of the released MUTR checkpoints, one module each (see mutr.model.backbone)."""
