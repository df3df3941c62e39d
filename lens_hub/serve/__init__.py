"""Views: rendering trajectories and evaluations, and the explorer that serves them."""
