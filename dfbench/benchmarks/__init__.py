"""Task adapters: backbone × task → Result, with named, versioned protocol variants."""
