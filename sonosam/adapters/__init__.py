"""Med-SA adapters for SAM-family models (adapters in every encoder block, SD-Trans, HyP-Adpt), their
training on volumes with label maps, and slab-by-slab inference: see docs/adapters.md. The `sonosam train adapters` command is
`sonosam.adapters.cli.register(subparsers)` / `run(args)`."""

from ..lazy import lazy_attributes

# Loaded on first use, so that the command line (`sonosam.adapters.cli`) builds its parser without torch.
_HOMES = {**dict.fromkeys(['DEFAULT_CONFIG', 'Adapter', 'HyPAdapter', 'MedSADecoderBlock', 'MedSATinyViTBlock', 'MedSAViTBlock', 'ParameterShare', 'add_medsa_adapters', 'adapter_parameter_names', 'adapter_state_dict', 'freeze_base', 'is_adapted', 'load_adapters', 'read_adapter_file', 'save_adapters', 'slab_depth', 'trainable_share'], "modules"),
          **dict.fromkeys(['TrainResult', 'dice_focal_loss', 'segment_volume_with_adapters', 'simulate_box', 'simulate_clicks', 'train_adapters'], "training")}

__all__ = ["DEFAULT_CONFIG", "Adapter", "HyPAdapter", "MedSADecoderBlock", "MedSATinyViTBlock", "MedSAViTBlock",
           "ParameterShare", "add_medsa_adapters", "adapter_parameter_names", "adapter_state_dict", "freeze_base",
           "is_adapted", "load_adapters", "read_adapter_file", "save_adapters", "slab_depth", "trainable_share",
           "TrainResult", "dice_focal_loss", "segment_volume_with_adapters", "simulate_box", "simulate_clicks",
           "train_adapters"]

__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
