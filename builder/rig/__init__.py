"""The test rig: QEMU + swtpm with an emulated late launch (issue 6).

`launch` describes what the rig's late launch extends, `swtpm_ctrl` and `tpmwire` are
the pure byte formats, `tpmproxy` owns swtpm's control channel between QEMU and swtpm,
and `qemu` starts the three processes and watches the guest's console.
"""
