"""The supervisor's side of the fork: the loop, its children as it sees them, pools, spawning."""
