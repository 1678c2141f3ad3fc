from began_dist.cli import main

raise SystemExit(main())
