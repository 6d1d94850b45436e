"""The command line (:mod:`.cli`) and batches of scene folders (:mod:`.batch`)."""
