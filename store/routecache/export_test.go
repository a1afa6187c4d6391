package routecache

// Sweep runs one sweep now (Run's runs every minute), by the cache's clock.
func (c *Cache) Sweep() int { return c.sweep(c.now()) }
