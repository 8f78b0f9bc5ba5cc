"""Backbone families, one module each; every module registers its entries on import.

`BACKBONES` imports all of them the first time a name is looked up, so adding a backbone
is one module here plus one `configs/backbone/<name>.yaml`.
"""
