"""What comes from a camera: photos and masks (:mod:`.images`), camera files
(:mod:`.cameras`: transforms.json, COLMAP, LLFF; undistortion), a scene
folder's frames (:mod:`.frames`) and the capture simulator's effects
(:mod:`.simulate`). A new camera format goes in :mod:`.cameras`."""
