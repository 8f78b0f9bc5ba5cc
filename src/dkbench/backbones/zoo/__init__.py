"""Backbone families, one module each; every module registers its entries on import.

A lookup imports only the module that registers the name: the module of that name, else the one
`MODULES` lists (family files register several names), else every module. Adding a backbone is
one module here plus one `configs/backbone/<name>.yaml` (and a `MODULES` line if the module is
named otherwise, so that runs of it import nothing else; a test checks the index).
"""

#: backbone name → module of this package that registers it (names that are not module names)
MODULES = {
    "tinycnn": "tiny",
    "resnet18": "monai_resnet", "resnet18_28": "monai_resnet",
    "resnet50": "monai_resnet", "resnet50_28": "monai_resnet",
    "densenet121": "monai_densenet",
    "efficientnet_b0": "monai_efficientnet", "efficientnet_lite0": "monai_efficientnet",
    "unet": "monai_unet", "attention_unet": "monai_unet", "segresnet": "monai_unet",
    "unet_efficientnet_lite0": "efficientnet_unet",
    # registered only where `import timm` works (the optional [timm] extra)
    "timm_resnet18": "timm_backbones", "timm_efficientnet_b0": "timm_backbones",
    "timm_convnext_atto": "timm_backbones",
}
