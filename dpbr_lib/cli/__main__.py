from dpbr_lib.cli import main

raise SystemExit(main())
