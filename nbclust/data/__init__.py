"""The data: the named data sets and image files (:mod:`.datasets`), the hand-crafted features
computed from them (:mod:`.features`: dense SIFT + PCA, cached on disk), and how nbclust writes its
files (:mod:`.io`: atomic writes, pickle-free state files).  Nothing is imported here.
"""
