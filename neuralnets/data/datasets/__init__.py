"""One module per built-in recording: `mc_maze_small`, `ca1_linear_track`."""
