"""Study datasets: preprocessing, pools and subject-disjoint splits, shards with a manifest, the torch Dataset."""
