"""Dataset readers: one module per dataset family; each registers itself in DATASETS."""

#: dataset reader name → module of this package that registers it (names that are not module names)
MODULES = {"busi_binary": "busi", "busi_seg": "busi", "kvasir_seg": "kvasir", "probe_seg": "probe",
           "busi_det": "detection", "kvasir_det": "detection", "probe_det": "detection"}
