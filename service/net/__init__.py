"""Network edges shared by both servers: API keys, bounded connection counts, cheap deadlines on
one await. May import `config`."""
