"""Med-SA adapters for SAM-family models: see docs/adapters.md."""

from .modules import (Adapter, HyPAdapter, MedSADecoderBlock, MedSATinyViTBlock, MedSAViTBlock, ParameterShare,
                      DEFAULT_CONFIG, add_medsa_adapters, adapter_parameter_names, adapter_state_dict, freeze_base,
                      is_adapted, load_adapters, read_adapter_file, save_adapters, trainable_share)

__all__ = ["Adapter", "HyPAdapter", "MedSADecoderBlock", "MedSATinyViTBlock", "MedSAViTBlock", "ParameterShare",
           "DEFAULT_CONFIG", "add_medsa_adapters", "adapter_parameter_names", "adapter_state_dict", "freeze_base",
           "is_adapted", "load_adapters", "read_adapter_file", "save_adapters", "trainable_share"]
