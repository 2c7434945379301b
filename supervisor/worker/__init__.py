"""The child side of the fork: what runs inside a db_worker child (and the scheduler child).

Nothing here imports the supervisor's loop, chores or observation modules.
"""
