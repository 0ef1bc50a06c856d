from aeron_tui.cli import main

main()
