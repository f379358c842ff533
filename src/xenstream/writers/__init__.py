"""The writers: v2 streams and every envelope (:mod:`.v2`), legacy streams
(:mod:`.legacy`) and the README's sample (:mod:`.sample`)."""
