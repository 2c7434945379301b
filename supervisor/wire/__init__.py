"""The small formats both sides of the fork share: reports, control lines, the child's spec."""
