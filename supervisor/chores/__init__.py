"""The supervisor's database chores: lost rows, retries, heartbeats, LISTEN; each call time-boxed."""
