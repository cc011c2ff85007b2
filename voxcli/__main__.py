from voxcli.cli.app import main

main()
