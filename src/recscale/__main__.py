from recscale.cli import main

raise SystemExit(main())
