"""What every step runs on: atomic files, progress bars, devices and precision, several processes."""
