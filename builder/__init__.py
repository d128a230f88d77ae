"""actvsm: build measured, bootable appliance images (acTvSM platform)."""

__version__ = "0.1.0"
