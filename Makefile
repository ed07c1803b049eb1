.PHONY: demo test install
demo:  ## render 8 tiny-sd variants end to end (first command of the quick start)
	bash scripts/demo.sh
test:  ## install test needs and run the suite (second command; what CI runs)
	bash scripts/test.sh
install:
	bash scripts/install.sh
