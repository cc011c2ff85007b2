from voxcli.cli import main

main()
