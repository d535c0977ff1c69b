from transfer_cli.cli import main

main()
