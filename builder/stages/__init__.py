"""The stages of `actvsm build`, in pipeline order; each is a function of a BuildContext.

base: the root tree and the read-only image; boot: kernel, tboot and the initramfs;
launch: command lines, launch policy, GRUB entries and predicted PCRs; seal: the
volumes; installer: the disk image.
"""
