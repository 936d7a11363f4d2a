"""DiffQuant: train trading policies end to end on what they earn (Sharpe through a differentiable simulator)."""
