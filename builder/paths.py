"""Where the project's own resources live (templates, initramfs skeleton, images)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
INITRAMFS = ROOT / "initramfs"
IMAGES = ROOT / "images"
PLATFORMS = IMAGES / "platforms"
