from cvmigrate.cli import main

raise SystemExit(main())
