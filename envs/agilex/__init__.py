"""AgileX Cobot Magic (two PiPER arms) in MuJoCo: the DFM-VLA real-world tasks as simulated tasks."""
