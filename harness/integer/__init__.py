"""Integer deployment: the framework-free IntegerModel, its export from a QuantModel, fixed-point rules,
weight packing, and the reference executor every target is compared with."""
