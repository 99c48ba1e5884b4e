"""Other force-field methods run on our data and splits (the reference sgdml package)."""
