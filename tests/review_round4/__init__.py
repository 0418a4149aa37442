"""Review round 4: reproductions of defects found on main (198cec7). Every test here fails on that commit."""
