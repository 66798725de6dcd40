from luban.cli import main

raise SystemExit(main())
