from hclr_ids.cli import main

raise SystemExit(main())
