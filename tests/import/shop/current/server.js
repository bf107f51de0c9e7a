// The storefront and admin server (a stand-in: the import only looks at the file).
