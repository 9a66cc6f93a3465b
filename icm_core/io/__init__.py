"""Files the core reads and writes: images and masks (:mod:`.images`), saved reference contexts
(:mod:`.context_files`), grouped matting datasets (:mod:`.datasets`), and the file-safety rules every writer
follows (:mod:`.file_safety`: collision-free names, atomic writes, inputs never replaced).
"""
