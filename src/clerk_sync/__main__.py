from clerk_sync.cli import main

main()
