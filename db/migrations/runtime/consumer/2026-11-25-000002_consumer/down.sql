DROP TABLE dead_letters;
DROP TABLE inbox;
DROP TABLE consumer_members;
DROP TABLE partition_leases;
DROP TABLE consumer_offsets;
