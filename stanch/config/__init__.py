"""Where an installation's settings come from (the environment), how a configuration file
names its secrets, and how its mistakes are reported. The bottom layer: imports no other
sub-package."""
