from edgeexit.cli import main

main()
