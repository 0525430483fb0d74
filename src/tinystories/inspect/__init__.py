"""`tinystories inspect`: attention heads and MLP neurons of any model directory (paper section 5)."""
