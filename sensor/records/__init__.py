"""Record shaping: the Defender-shaped connection records, ECS, community id, line encoding."""
