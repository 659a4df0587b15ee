"""Lightning callbacks that observe or feed training: solver rewards, sample logging."""
